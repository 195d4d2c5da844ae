# Deployment gate for pii-svc: allow a DeployRequest only when the enclave's
# Nitro attestation verified, its measurements equal the expected ones, and the
# person deploying authenticated with WebAuthn.
#
# Input (see policy/opa/examples/): {
#   "kind": "DeployRequest", "service": "pii-svc",
#   "actor": {"id": "...", "assurance": "webauthn"},
#   "expected": {"PCR0": "hex", ...},
#   "attestation": {"verified": true, "pcrs": {"PCR0": "hex", ...}}
# }
# `verifier policy --doc FILE --at T` fills "attestation" from a real
# verification, so the policy never trusts a self-reported result.
package pii.attestation

import rego.v1

default allow := false

allow if count(deny) == 0

deny contains "not a DeployRequest" if input.kind != "DeployRequest"

deny contains "service is not pii-svc" if input.service != "pii-svc"

deny contains "actor assurance is not webauthn" if input.actor.assurance != "webauthn"

deny contains "nitro attestation did not verify" if not input.attestation.verified

deny contains "no expected measurements given" if count(object.keys(object.union({}, input.expected))) == 0

deny contains msg if {
	some pcr, want in input.expected
	not input.attestation.pcrs[pcr]
	msg := sprintf("%s is missing from the attestation", [pcr])
}

deny contains msg if {
	some pcr, want in input.expected
	got := input.attestation.pcrs[pcr]
	lower(got) != lower(want)
	msg := sprintf("%s differs from the expected measurement", [pcr])
}
