#!/usr/bin/env bash
# `just demo`: the GitHub bisect bot end to end on the embedded default (`jetrun dev`).
#
# Makes a local git repository with a planted regression, starts a local stand-in for the
# GitHub REST API (examples/bisect/github_standin.py, recording every request), sends a
# signed `issue_comment` webhook "/bisect v1 main", lets jetrun clone the repository and
# run `git bisect run` in an isolated container (the built-in `host` image: the host's
# /usr, so git, read-only; no network), then prints the first bad commit from the job's
# result and the comment that was posted on the "issue".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

cargo build -q -p jetrun
JETRUN="$ROOT/target/debug/jetrun"
WORK=$(mktemp -d /tmp/jetrun-demo.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port); NATS_PORT=$(free_port); GH_PORT=$(free_port)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== 1. a repository with a planted regression: $WORK/repo"
REPO="$WORK/repo"
mkdir -p "$REPO/.jetrun"
export GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@example.invalid GIT_COMMITTER_NAME=demo GIT_COMMITTER_EMAIL=demo@example.invalid
git -C "$REPO" init -q -b main
printf '#!/bin/sh\n# exit 0: good, 1: bad\n[ "$(sh add.sh 2 3)" = 5 ]\n' > "$REPO/.jetrun/bisect-test"
chmod +x "$REPO/.jetrun/bisect-test"
printf 'echo $(($1 + $2))\n' > "$REPO/add.sh"
git -C "$REPO" add -A && git -C "$REPO" commit -q -m "add: sum two numbers"
git -C "$REPO" tag v1
for i in 2 3 4 5 6 7 8; do
  if [ "$i" = 5 ]; then
    printf 'echo $(($1 + $2 + 1))  # "tuned"\n' > "$REPO/add.sh"
    git -C "$REPO" add -A && git -C "$REPO" commit -q -m "add: tune the sum"
  else
    echo "note $i" >> "$REPO/NOTES"
    git -C "$REPO" add -A && git -C "$REPO" commit -q -m "notes: entry $i"
  fi
done
PLANTED=$(git -C "$REPO" log --format=%H --grep 'tune the sum')
git -C "$REPO" log --oneline | sed 's/^/   /'

echo "== 2. the GitHub stand-in on 127.0.0.1:$GH_PORT"
python3 examples/bisect/github_standin.py "127.0.0.1:$GH_PORT" "$WORK/github-requests.jsonl" &
PIDS+=($!)

echo "== 3. jetrun dev (embedded NATS, every function, the OCI runner where it can)"
export JETRUN_GITHUB_WEBHOOK_SECRET=demo-secret
export JETRUN_CHECKOUT_LOCAL_ROOTS="$WORK"
"$JETRUN" dev --data-dir "$WORK/dev" --http "127.0.0.1:$HTTP_PORT" --nats-listen "127.0.0.1:$NATS_PORT" \
  --rules examples/rules/bisect.yaml --github-api-url "http://127.0.0.1:$GH_PORT" \
  > "$WORK/dev.out" 2> "$WORK/dev.log" &
DEV_PID=$!
PIDS+=($DEV_PID)
for _ in $(seq 1 300); do
  grep -q '^ready' "$WORK/dev.out" 2>/dev/null && break
  kill -0 "$DEV_PID" 2>/dev/null || { echo "jetrun dev died:"; tail -20 "$WORK/dev.log"; exit 1; }
  sleep 0.1
done
grep -q '^ready' "$WORK/dev.out" || { echo "jetrun dev did not come up"; tail -20 "$WORK/dev.log"; exit 1; }
export JETRUN_NATS_URL="nats://127.0.0.1:$NATS_PORT"

echo "== 4. a signed issue_comment webhook: /bisect v1 main"
DELIVERY=$(python3 -c 'import uuid; print(uuid.uuid4())')
python3 - "$REPO" > "$WORK/payload.json" <<'PY'
import json, sys
p = json.load(open("fixtures/github-webhooks/issue_comment/created.payload.json"))
p["comment"]["body"] = "/bisect v1 main"
p["repository"]["full_name"] = "demo/app"
p["repository"]["clone_url"] = sys.argv[1]   # a real repository: https://github.com/<owner>/<name>.git
print(json.dumps(p))
PY
SIG=$(python3 -c 'import hmac,hashlib,sys; print("sha256="+hmac.new(b"demo-secret", open(sys.argv[1],"rb").read(), hashlib.sha256).hexdigest())' "$WORK/payload.json")
curl -sS -o /dev/null -w '   webhook answered %{http_code}\n' "http://127.0.0.1:$HTTP_PORT/webhooks/github" \
  -H 'X-GitHub-Event: issue_comment' -H "X-GitHub-Delivery: $DELIVERY" \
  -H "X-Hub-Signature-256: $SIG" -H 'Content-Type: application/json' --data-binary @"$WORK/payload.json"

echo "== 5. the bisect job"
ID=""
for _ in $(seq 1 600); do
  ID=$("$JETRUN" jobs list --queue bisect --json 2>/dev/null | python3 -c 'import json,sys
for l in sys.stdin:
    r = json.loads(l)
    if r.get("status") in ("succeeded","failed","timed_out","cancelled"): print(r["id"]); break' || true)
  [ -n "$ID" ] && break
  sleep 0.2
done
[ -n "$ID" ] || { echo "the job did not end"; "$JETRUN" jobs list --queue bisect; tail -30 "$WORK/dev.log"; exit 1; }
"$JETRUN" jobs get "$ID" --json > "$WORK/job.json"
python3 - "$WORK/job.json" "$PLANTED" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"   job {r['id']}: {r['status']}, result {json.dumps(r.get('result'))}")
if r.get("result_error"): print("   result_error:", r["result_error"])
first = (r.get("result") or {}).get("first_bad")
print(f"   first bad commit: {first}")
print(f"   planted:          {sys.argv[2]}  -> {'FOUND' if first == sys.argv[2] else 'MISSED'}")
PY

echo "== 6. what the bot said on the issue (requests to the GitHub stand-in)"
for _ in $(seq 1 100); do
  grep -q '"body": {"body"' "$WORK/github-requests.jsonl" 2>/dev/null && break
  sleep 0.1
done
python3 - "$WORK/github-requests.jsonl" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    b = r["body"]
    what = b.get("content") if isinstance(b, dict) and "content" in b else (b.get("body") if isinstance(b, dict) else "")
    print(f"   {r['method']} {r['path']}\n      {what}")
PY
echo "(everything is under $WORK)"
