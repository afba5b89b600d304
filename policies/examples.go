package policies

import (
	"embed"
	"io/fs"
)

//go:embed examples/*.yaml
var examples embed.FS

// Examples returns the example policy files (examples/*.yaml) as a read-only
// file system rooted at the examples directory.
func Examples() fs.FS {
	sub, err := fs.Sub(examples, "examples")
	if err != nil { // cannot happen: the directory is embedded
		return examples
	}
	return sub
}

// LoadExamples loads the embedded example policy (used by keytrail dev).
func LoadExamples() (*Policy, error) {
	return LoadFS(Examples(), ".")
}
