# Sourced by the bench scripts with the name of their run directory: goes to the project root,
# installs what kd needs, builds kd in release mode, and sets $kd and $work (runs/NAME, created).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
Scripts/setup.sh
swift build -c release >/dev/null
kd=.build/release/kd
work=runs/$1
mkdir -p "$work"
