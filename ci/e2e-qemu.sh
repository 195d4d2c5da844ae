#!/usr/bin/env bash
# The measured image, booted: `eif build` packs Debian's kernel, our init
# (eif/guest/init), the vsock/NSM modules and the static pii-enclave into an
# EIF; QEMU's nitro-enclave machine boots it under TCG with virtio-vsock
# (vhost-device-vsock, Unix-socket backend) and its emulated NSM; the sidecar
# reaches it over hybrid vsock (hvsock:…); the suite runs through the
# sidecar. Toolchain cached by ci/qemu/setup.sh.
#
#   ci/e2e-qemu.sh          (just e2e-qemu)
#
# Last line: `qemu e2e: N passed, M failed`; exit status non-zero on any
# failure. Every wait is bounded; no AF_VSOCK socket of this machine is used
# (the guest's vsock exists only behind vhost-device-vsock's Unix sockets).
set -uo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
t0=$SECONDS
stage() { echo "== qemu e2e: $1 (at $((SECONDS - t0)) s)"; }
pass=0; fail=0
die() { echo "qemu e2e: FAIL $*"; echo "qemu e2e: $pass passed, $((fail + 1)) failed"; exit 1; }
C=${PII_CACHE_DIR:-$HOME/.cache/pii-enclave}/qemu-nitro
BOOT_TIMEOUT=${QEMU_BOOT_TIMEOUT:-180}
# A safety net for each VM's whole life (the suite's checks run inside it).
LIFETIME=${QEMU_LIFETIME:-900}

stage "toolchain"
ci/qemu/setup.sh || die "toolchain setup failed"
KVER=$(cat "$C/kernel/current"); K="$C/kernel/$KVER"
QEMU="$C/bin/qemu-system-x86_64"; VHD="$C/bin/vhost-device-vsock"

stage "binaries (the enclave static for musl)"
command -v musl-gcc >/dev/null || { apt-get update -qq && apt-get install -y -qq musl-tools >/dev/null || die "musl-tools"; }
rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl \
  || rustup target add x86_64-unknown-linux-musl >/dev/null || die "musl target"
# The musl build has a target directory of its own in the cache (like the
# fuzz builds): a clean clone then rebuilds only this workspace's crates.
MUSL_TARGET=${PII_CACHE_DIR:-$HOME/.cache/pii-enclave}/musl-target
cargo build --release -q -p pii-enclave --features dangerous-dev --bin pii-enclave-dangerous-dev \
  --target x86_64-unknown-linux-musl --target-dir "$MUSL_TARGET" || die "enclave build"
cargo build -q -p host-proxy --bin host-proxy && cargo build -q -p eif -p verifier || die "host build"
BIN=$MUSL_TARGET/x86_64-unknown-linux-musl/release/pii-enclave-dangerous-dev

W=$PWD/target/qemu-e2e; rm -rf "$W"; mkdir -p "$W/boot/bin" "$W/boot/lib/modules" "$W/run" "$W/store"
stage "image"
cp /bin/busybox "$W/boot/bin/" && cp eif/guest/init "$W/boot/init" && chmod 755 "$W/boot/init"
cp "$K"/modules/*.ko "$W/boot/lib/modules/"
(cd "$W/boot" && find . | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --reproducible 2>/dev/null) > "$W/boot.cpio" \
  && [ -s "$W/boot.cpio" ] || die "boot ramdisk"
# The development seal and root token (dev binary) with the guest's real NSM.
target/debug/eif build --kernel "$K/vmlinuz" --cmdline "console=ttyS0 reboot=t panic=-1 rdinit=/init" \
  --bootstrap-ramdisk "$W/boot.cpio" --binary "$BIN" --binary-name pii-enclave \
  --arg=serve --arg=--listen --arg=vsock://any:5000 --arg=--log-format --arg=text \
  --arg=--dangerous-dev-seal-passphrase --arg=qemu-e2e-passphrase \
  --arg=--dangerous-dev-root-token --arg=qemu-e2e-root-token \
  --output "$W/pii-enclave.eif" >/dev/null || die "eif build"
target/debug/eif describe "$W/pii-enclave.eif" > "$W/describe.json" || die "eif describe"
python3 - "$W/describe.json" "$W/expected.json" <<'PY' || die "PCRs"
import json, sys
m = json.load(open(sys.argv[1]))["Measurements"]
json.dump({k: m[k] for k in ("PCR0", "PCR1", "PCR2")}, open(sys.argv[2], "w"))
PY

ok() { pass=$((pass + 1)); echo "qemu e2e: ok   $1"; }
bad() { fail=$((fail + 1)); echo "qemu e2e: FAIL $1"; }
code2xx() { case "$1" in 2??) return 0;; *) return 1;; esac; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }

RUN=$W/run; QPID=""; VPID=""; PPID_=""; BPID=""; DPID=""; IMAGE=$W/pii-enclave.eif
boot() {
  rm -f "$RUN/vhost.sock" "$RUN"/vm.vsock*
  "$VHD" --vm guest-cid=16,socket="$RUN/vhost.sock",uds-path="$RUN/vm.vsock" >>"$RUN/vhd.log" 2>&1 &
  VPID=$!
  for _ in $(seq 100); do [ -S "$RUN/vhost.sock" ] && break; sleep 0.05; done
  [ -S "$RUN/vhost.sock" ] || return 1
  timeout "$LIFETIME" "$QEMU" -M nitro-enclave,vsock=c0,id=i-qemu-e2e-enc0001,parent-id=i-parent0001,parent-role=arn:aws:iam::123456789012:role/e2e \
    -accel tcg -m 1024M -nographic -no-reboot -L /usr/share/qemu -kernel "$IMAGE" \
    -chardev socket,id=c0,path="$RUN/vhost.sock" </dev/null >>"$RUN/serial.log" 2>>"$RUN/qemu.err" &
  QPID=$!
}
halt() {
  [ -n "$QPID" ] && { kill "$QPID" 2>/dev/null; wait "$QPID" 2>/dev/null; QPID=""; }
  [ -n "$VPID" ] && { kill "$VPID" 2>/dev/null; wait "$VPID" 2>/dev/null; VPID=""; }
}
cleanup() {
  halt
  for p in "$PPID_" "$BPID" "$DPID"; do [ -n "$p" ] && { kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; }; done
}
trap cleanup EXIT

port=$(free_port)
S=http://127.0.0.1:$port
cat > "$W/proxy.toml" <<TOML
listen = "127.0.0.1:$port"
enclave = "hvsock:$RUN/vm.vsock:5000"
keyring_dir = "$W/store/keyring"
audit_dir = "$W/store/audit"
token_store = "sqlite:$W/store/tokens.db"
TOML
T='X-Vault-Token: qemu-e2e-root-token'
api() { curl -s -m 20 -H "$T" "$@"; }
ready() { # seconds waited, or fails after BOOT_TIMEOUT
  local start=$SECONDS
  while [ $((SECONDS - start)) -lt "$BOOT_TIMEOUT" ]; do
    if [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$S/v1/sys/health")" = 200 ]; then
      echo $((SECONDS - start)); return 0
    fi
    kill -0 "$QPID" 2>/dev/null || { echo "guest exited" >&2; return 1; }
    sleep 0.2
  done
  echo "no answer in ${BOOT_TIMEOUT}s" >&2; return 1
}

stage "boot"
boot || die "vhost-device-vsock did not start"
target/debug/host-proxy serve --config "$W/proxy.toml" --log-format json >"$RUN/proxy.log" 2>&1 &
PPID_=$!
if secs=$(ready); then ok "boot to ready in ${secs}s (TCG)"; else
  bad "boot to ready"; tail -30 "$RUN/serial.log" >&2; echo "qemu e2e: $pass passed, $fail failed"; exit 1
fi
grep -q "INIT: devices up" "$RUN/serial.log" && ok "guest init: virtio-mmio, vsock, /dev/nsm" || bad "guest init"
# The real NSM provider: the enclave opened /dev/nsm and mixed its GetRandom
# bytes into the kernel pool before serving.
grep -aq "mixed 64 bytes of NSM randomness" "$RUN/serial.log" && ok "enclave took randomness from the guest's NSM" \
  || bad "NSM randomness"

stage "transit"
check "create key" code2xx "$(api -o /dev/null -w '%{http_code}' -X POST "$S/v1/transit/keys/e2e" -d '{}')"
PT=$(printf 'jane.doe@example.com' | base64)
CT=$(api -X POST "$S/v1/transit/encrypt/e2e" -d "{\"plaintext\":\"$PT\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["ciphertext"])' 2>/dev/null)
check "encrypt" test -n "$CT"
dec() { api -X POST "$S/v1/transit/decrypt/e2e" -d "{\"ciphertext\":\"$1\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["plaintext"])' 2>/dev/null; }
check "decrypt" test "$(dec "$CT")" = "$PT"
check "rotate" test "$(api -o /dev/null -w '%{http_code}' -X POST "$S/v1/transit/keys/e2e/rotate")" = 200
CT2=$(api -X POST "$S/v1/transit/encrypt/e2e" -d "{\"plaintext\":\"$PT\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["ciphertext"])' 2>/dev/null)
check "encrypt after rotate uses v2" test "${CT2#vault:v2:}" != "$CT2"

stage "tokenize"
check "tokenization transformation" code2xx "$(api -o /dev/null -w '%{http_code}' -X POST "$S/v1/transform/transformations/tokenization/emails" -d '{"allowed_roles":["edge"]}')"
check "role" code2xx "$(api -o /dev/null -w '%{http_code}' -X POST "$S/v1/transform/role/edge" -d '{"transformations":["emails"]}')"
TOK=$(api -X POST "$S/v1/transform/encode/edge" -d '{"value":"jane.doe@example.com","transformation":"emails"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["encoded_value"])' 2>/dev/null)
check "encode" test -n "$TOK"
check "decode" test "$(api -X POST "$S/v1/transform/decode/edge" -d "{\"value\":\"$TOK\",\"transformation\":\"emails\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["decoded_value"])' 2>/dev/null)" = "jane.doe@example.com"

stage "attestation"
NONCE=$(python3 -c 'import os; print(os.urandom(16).hex())')
api "$S/v1/sys/attestation?nonce=$NONCE" | python3 -c 'import json,sys,base64; sys.stdout.buffer.write(base64.b64decode(json.load(sys.stdin)["data"]["document"]))' > "$W/doc.cbor" 2>/dev/null
check "document from the guest's NSM" test -s "$W/doc.cbor"
V=target/debug/verifier
check "verifies with --dangerous-unsigned-qemu: PCR0/1/2 = eif describe, fresh nonce" \
  "$V" verify --doc "$W/doc.cbor" --at "$(date +%s)" --expected "$W/expected.json" --nonce "$NONCE" --dangerous-unsigned-qemu --format text
refused_by_name() {
  local out; out=$("$V" verify --doc "$W/doc.cbor" --at "$(date +%s)" --format json 2>/dev/null)
  [ $? -eq 1 ] && echo "$out" | grep -q "unsigned QEMU nitro-enclave document"
}
refused() { # reason-substring, then flags: exit 1 (rejected, not a usage error) naming the reason
  local why=$1 out; shift
  out=$("$V" verify --doc "$W/doc.cbor" --at "$(date +%s)" --dangerous-unsigned-qemu "$@" --format json 2>/dev/null)
  [ $? -eq 1 ] && echo "$out" | grep -q "$why"
}
check "refused without the flag, by name" refused_by_name
python3 -c 'import json,sys; e=json.load(open(sys.argv[1])); e["PCR0"]="00"*48; json.dump(e,open(sys.argv[2],"w"))' "$W/expected.json" "$W/wrong.json"
check "wrong PCR0 refused" refused "PCR0 mismatch" --expected "$W/wrong.json" --nonce "$NONCE"
check "another nonce refused" refused "nonce does not match" --expected "$W/expected.json" --nonce 00

stage "hostile or missing peers"
# A port nobody listens on in the guest: the backend answers without OK.
connect_refused() {
  python3 - "$RUN/vm.vsock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(10)
s.connect(sys.argv[1]); s.sendall(b"CONNECT 5999\n")
try:
    reply = s.recv(64)  # b"" is EOF: the backend closed the connection
except socket.timeout:
    sys.exit(1)         # silence is not a refusal
sys.exit(0 if not reply.startswith(b"OK ") else 1)
PY
}
check "CONNECT to a port the guest does not serve is refused" connect_refused

stage "restart: unseal from the stored blob"
halt
boot || die "vhost-device-vsock did not restart"
if secs=$(ready); then ok "reboot to ready in ${secs}s"; else bad "reboot to ready"; fi
check "old ciphertext decrypts after restart" test "$(dec "$CT")" = "$PT"
check "v2 ciphertext decrypts after restart" test "$(dec "$CT2")" = "$PT"

stage "a guest that never comes up"
# The same image without the NSM module: init stops at that step and ends
# the VM off; the wait ends when the guest does, long before the timeout.
halt
mkdir -p "$W/broken"; cp -r "$W/boot" "$W/broken/boot"; rm "$W/broken/boot/lib/modules/nsm.ko"
(cd "$W/broken/boot" && find . | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --reproducible 2>/dev/null) > "$W/broken.cpio"
target/debug/eif build --kernel "$K/vmlinuz" --cmdline "console=ttyS0 reboot=t panic=-1 rdinit=/init" \
  --bootstrap-ramdisk "$W/broken.cpio" --binary "$BIN" --binary-name pii-enclave --arg=serve \
  --output "$W/broken.eif" >/dev/null || die "eif build (broken)"
EIF_SAVED=$W/pii-enclave.eif; IMAGE=$W/broken.eif; : > "$RUN/serial.log"
started=$SECONDS
boot || die "vhost-device-vsock did not start"
if ready >/dev/null 2>&1; then bad "broken guest reported ready"; else
  waited=$((SECONDS - started))
  if grep -q "INIT: FAILED: nsm" "$RUN/serial.log" && [ "$waited" -lt 60 ]; then
    ok "broken guest fails at its step (nsm) in ${waited}s, not at the ${BOOT_TIMEOUT}s timeout"
  else bad "broken guest: no clear failure (${waited}s)"; fi
fi
halt; IMAGE=$EIF_SAVED
boot || die "vhost-device-vsock did not restart"
ready >/dev/null || bad "ready again after the broken guest"

BENCH_SECS=${QEMU_BENCH_SECONDS:-0}
if [ "$BENCH_SECS" != 0 ]; then
  stage "bench: encrypt at c=16 over virtio-vsock (QEMU, TCG) and over a Unix socket (dev stack)"
  command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null || die "wrk"; }
  cat > "$W/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"plaintext":"amFuZS5kb2VAZXhhbXBsZS5jb20="}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Vault-Token"] = os.getenv("TOKEN")
LUA
  bench() { # label url token
    TOKEN=$3 wrk -t2 -c16 -d1s -s "$W/post.lua" "$2/v1/transit/encrypt/e2e" >/dev/null 2>&1
    TOKEN=$3 wrk -t2 -c16 -d"${BENCH_SECS}s" --latency -s "$W/post.lua" "$2/v1/transit/encrypt/e2e" \
      | python3 ci/wrk2json.py "$1" 16 1 | tee -a "$W/bench.jsonl"
  }
  bench qemu-vsock "$S" qemu-e2e-root-token
  dport=$(free_port)
  # PII_BENCH_PROFILE (ci/lib.sh): CI's short run uses the debug dev stack.
  bench_build_dev_enclave && bench_build -p host-proxy --bin host-proxy || die "dev stack build"
  "$BENCH_BIN/host-proxy" dev --listen "127.0.0.1:$dport" --data-dir "$W/dev" --log-format json \
    --enclave-bin "$BENCH_BIN/pii-enclave-dangerous-dev" >"$W/dev.out" 2>"$W/dev.log" &
  DPID=$!
  for _ in $(seq 100); do curl -sf -m 1 "http://127.0.0.1:$dport/v1/sys/health" >/dev/null && break; sleep 0.1; done
  curl -s -m 5 -H 'X-Vault-Token: dev-root-token' -X POST "http://127.0.0.1:$dport/v1/transit/keys/e2e" -d '{}' >/dev/null
  bench unix-dev "http://127.0.0.1:$dport" dev-root-token
  kill "$DPID" 2>/dev/null; wait "$DPID" 2>/dev/null
  DPID=""
  bench_ok() { python3 - "$W/bench.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
sys.exit(0 if len(rows) == 2 and all(r["requests"] > 0 and r["errors"] == 0 for r in rows) else 1)
PY
  }
  check "bench: both paths answered every request (target/qemu-e2e/bench.jsonl)" bench_ok
fi

stage "egress: the Vault seal inside the guest reaches OpenBao through the relay"
# Another image, sealed by Vault Transit: every keyring write goes from the
# enclave (vsock CID 2, port 8000) through vhost-device-vsock to the
# sidecar's relay (hvsock listener <uds>_8000), which allows one upstream:
# OpenBao on this machine's loopback. No connection to any AF_VSOCK CID here.
halt
export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
command -v bao >/dev/null || ci/setup.sh >/dev/null || die "OpenBao"
bport=$(free_port)
mkdir -p "$W/bao"
HOME="$W/bao" bao server -dev -dev-root-token-id=qemu-e2e-bao-root -dev-listen-address="127.0.0.1:$bport" >"$W/bao/log" 2>&1 &
BPID=$!
for _ in $(seq 100); do curl -sf -m 1 "http://127.0.0.1:$bport/v1/sys/health" >/dev/null && break; sleep 0.1; done
# The operator tool (vault-admin) is built beside the sidecar, not over it.
cp target/debug/host-proxy "$W/host-proxy-sidecar"
cargo build -q -p host-proxy --features vault-admin --bin host-proxy || die "host-proxy (vault-admin)"
cp target/debug/host-proxy "$W/host-proxy-admin" && cp "$W/host-proxy-sidecar" target/debug/host-proxy
VAULT_TOKEN=qemu-e2e-bao-root "$W/host-proxy-admin" vault bootstrap --address "http://127.0.0.1:$bport" \
  --deployment-id qemu-e2e --dangerous-wrapped-secret-id > "$W/bao/bootstrap.json" 2>"$W/bao/bootstrap.err" \
  || { cat "$W/bao/bootstrap.err" >&2; die "vault bootstrap"; }
BPORT=$bport python3 - "$W/bao/bootstrap.json" "$W/vault-seal.toml" <<'PY' || die "seal config"
import json, sys
b = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write(f"""listen = "vsock://any:5000"
[seal]
type = "vault-transit"
deployment_id = "qemu-e2e"
address = "http://127.0.0.1:8200"
dangerous_allow_http = true
mount = "transit"
key = "pii-enclave-kek"
approle_mount = "approle"
role_id = "{b['role_id']}"
dangerous_wrapped_secret_id = "{b['dangerous_wrapped_secret_id']}"
anchor_kv_mount = "pii-enclave-anchor"
[egress]
relay = "vsock://2:8000"
fixed = [{{ listen = "127.0.0.1:8200", upstream = "127.0.0.1:BAOPORT" }}]
""".replace("BAOPORT", str(__import__("os").environ["BPORT"])))
PY
target/debug/eif build --kernel "$K/vmlinuz" --cmdline "console=ttyS0 reboot=t panic=-1 rdinit=/init" \
  --bootstrap-ramdisk "$W/boot.cpio" --binary "$BIN" --binary-name pii-enclave \
  --config "$W/vault-seal.toml" --arg=serve --arg=--config --arg=/etc/pii-enclave/config.toml \
  --arg=--log-format --arg=text --arg=--dangerous-dev-root-token --arg=qemu-e2e-root-token \
  --output "$W/vault.eif" >/dev/null || die "eif build (vault seal)"
kill "$PPID_" 2>/dev/null; wait "$PPID_" 2>/dev/null
cat > "$W/proxy-vault.toml" <<TOML
listen = "127.0.0.1:$port"
enclave = "hvsock:$RUN/vm.vsock:5000"
keyring_dir = "$W/store-vault/keyring"
audit_dir = "$W/store-vault/audit"
token_store = "sqlite:$W/store-vault/tokens.db"
[relay]
listen = "hvsock:$RUN/vm.vsock:8000"
allow = [{ host = "127.0.0.1", port = $bport, allow_private = true }]
TOML
IMAGE=$W/vault.eif; : > "$RUN/serial.log"
boot || die "vhost-device-vsock did not start"
target/debug/host-proxy serve --config "$W/proxy-vault.toml" --log-format json >"$RUN/proxy-vault.log" 2>&1 &
PPID_=$!
if secs=$(ready); then ok "Vault-sealed guest ready in ${secs}s"; else bad "Vault-sealed guest ready"; fi
check "keyring write sealed by OpenBao through the relay (create key)" \
  code2xx "$(api -o /dev/null -w '%{http_code}' -X POST "$S/v1/transit/keys/via-relay" -d '{}')"
CTV=$(api -X POST "$S/v1/transit/encrypt/via-relay" -d "{\"plaintext\":\"$PT\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["ciphertext"])' 2>/dev/null)
check "encrypt/decrypt under the Vault-sealed keyring" test "$(api -X POST "$S/v1/transit/decrypt/via-relay" -d "{\"ciphertext\":\"$CTV\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["plaintext"])' 2>/dev/null)" = "$PT"
relayed() { # the sidecar's relay accepted connections to OpenBao (bytes are counted at close)
  curl -s -m 5 "$S/metrics" > "$W/metrics-vault.txt"
  grep -E "^pii_proxy_relay_connections_total\{upstream=\"127\.0\.0\.1:$bport\",result=\"ok\"\} [1-9]" \
    "$W/metrics-vault.txt" >/dev/null
}
check "the relay carried the enclave's connections to OpenBao (metrics)" relayed
sealed_by_vault() { # the stored blob names the Vault seal, not the dev seal
  local b; b=$(ls "$W/store-vault/keyring" | sort | tail -1)
  grep -aq "vault-transit" "$W/store-vault/keyring/$b"
}
check "the stored keyring is sealed by Vault Transit" sealed_by_vault
halt; kill "$BPID" 2>/dev/null; wait "$BPID" 2>/dev/null; BPID=""

stage "done"
halt
echo "qemu e2e: total $((SECONDS - t0)) s"
echo "qemu e2e: $pass passed, $fail failed"
[ "$fail" = 0 ]
