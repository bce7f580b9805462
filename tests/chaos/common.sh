# Shared by the chaos scripts: builds the services and the chaos driver
# (debug: fast to build; without test-only features), then runs `chaos run`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
"$ROOT/scripts/infra.sh" deps >&2
cargo build --locked --quiet -p chaos -p order-svc -p delivery-svc -p notify-svc -p simulator
CHAOS="$ROOT/target/debug/chaos"
OUT_BASE="$ROOT/target/chaos"
