// Package yamltest builds YAML documents that the tests of policies and
// policies/yamlcheck share.
package yamltest

import (
	"fmt"
	"strings"
)

// MergeLaughs is a "billion laughs" of merge keys: levels+1 anchored flow
// mappings, "&m0 " followed by first, then each "&mI {<<: [*mJ, ...]}"
// merging width aliases of the one before it (J = I-1), so that the last,
// &m<levels>, expands to width^levels merged mappings from a few hundred
// bytes. Each test writes them where its document needs them (a list, the
// claims of workloads), every one before the last's first alias.
func MergeLaughs(first string, levels, width int) []string {
	out := []string{"&m0 " + first}
	for i := 1; i <= levels; i++ {
		alias := fmt.Sprintf("*m%d", i-1)
		out = append(out, fmt.Sprintf("&m%d {<<: [%s]}", i, strings.TrimSuffix(strings.Repeat(alias+", ", width), ", ")))
	}
	return out
}
