package brokertest

// PaymentsPolicy is a minimal policy for tests: one Kubernetes issuer
// (https://k8s.example, ES256, session from the pod uid), the workload
// payments-api (owner team-payments, subject
// system:serviceaccount:payments:api in namespace payments) allowed one
// vault_token grant, payments-vault (ttl 15m, Vault policy payments-read),
// with no rate limit.
const PaymentsPolicy = `
version: 1
issuers:
  - name: k8s
    issuer: https://k8s.example
    jwks_url: https://k8s.example/jwks
    audiences: [keytrail]
    algorithms: [ES256]
    session_claim: kubernetes.io.pod.uid
workloads:
  - name: payments-api
    owner: team-payments
    match:
      issuer: k8s
      subject: system:serviceaccount:payments:api
      claims: {kubernetes.io.namespace: payments}
    grants: [payments-vault]
grants:
  - name: payments-vault
    kind: vault_token
    ttl: 15m
    vault_token: {policies: [payments-read]}
`
