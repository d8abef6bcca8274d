#!/usr/bin/env bash
# Launch a multi-node verl GRPO run of a Qwen2.5 model with an entrolab loss.
#
#   examples/verl/run.sh clip_cov|steer|hapo
#
# Before: a Ray cluster whose every node has the same Python environment with verl 0.9.x and entrolab[verl]
# installed (`ray start --head` on node 0, `ray start --address=<head>:6379` on the others), and the data as
# verl parquet files (e.g. verl's examples/data_preprocess/gsm8k.py) on a path every node can read.
# Settings from the environment: MODEL (default Qwen/Qwen2.5-7B-Instruct), DATA_DIR (default ~/data/gsm8k),
# NNODES (default 2), RAY_ADDRESS (default: submit to the local head at http://127.0.0.1:8265).
set -euo pipefail
method="${1:?usage: run.sh clip_cov|steer|hapo}"
here="$(cd "$(dirname "$0")" && pwd)"
[ -f "$here/$method.overrides" ] || { echo "no $here/$method.overrides" >&2; exit 2; }
export MODEL="${MODEL:-Qwen/Qwen2.5-7B-Instruct}" DATA_DIR="${DATA_DIR:-$HOME/data/gsm8k}" NNODES="${NNODES:-2}"
# the overrides files hold ${MODEL}, ${DATA_DIR}, ${NNODES}: substitute them (nothing else is expanded)
mapfile -t overrides < <(cat "$here/common.overrides" "$here/$method.overrides" |
  sed -e "s|\${MODEL}|$MODEL|g" -e "s|\${DATA_DIR}|$DATA_DIR|g" -e "s|\${NNODES}|$NNODES|g" | grep -v '^\s*$')
# Every Ray worker must import entrolab.integrations.verl before it builds the actor: the entry point that
# entrolab[verl] installs does it on `import verl`; VERL_USE_EXTERNAL_MODULES is the fallback when plug-in discovery
# is off (VERL_USE_EXTERNAL_PLUGINS=none).  The losses that need the update's token entropy (steer, hapo) also
# name entrolab.integrations.verl_entropy, the explicit opt-in that hands verl's entropy to them.
# ENTROLAB_VERL_LOSS_KWARGS carries the hyperparameters verl's config has no field for (STEER, HAPO); it must be
# readable on every node.
modules="entrolab.integrations.verl"
case "$method" in steer|hapo) modules="$modules,entrolab.integrations.verl_entropy" ;; esac
runtime_env=$(printf '{"env_vars": {"VERL_USE_EXTERNAL_MODULES": "%s", "ENTROLAB_VERL_LOSS_KWARGS": "%s"}}' \
  "$modules" "$here/entrolab_losses.json")
exec ray job submit --address="${RAY_ADDRESS:-http://127.0.0.1:8265}" --runtime-env-json="$runtime_env" -- \
  python3 -m verl.trainer.main_ppo "${overrides[@]}"
