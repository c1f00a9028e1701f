# Shared by the launchers (sourced, not run). ml_collections reads --config.* overrides only
# after --config=FILE, so the launcher's own overrides go right after the user's --config and
# before the user's other flags: the user's overrides still win.
#   with_overrides OVERRIDE... -- USER_ARGS...   sets the array CMD_ARGS
with_overrides() {
  local ours=() seen=0
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do ours+=("$1"); shift; done
  [ "$#" -gt 0 ] && shift
  CMD_ARGS=()
  while [ "$#" -gt 0 ]; do
    case "$1" in
      --config=*) CMD_ARGS+=("$1"); [ "$seen" = 1 ] || CMD_ARGS+=("${ours[@]}"); seen=1 ;;
      --config)   CMD_ARGS+=("$1" "$2"); shift; [ "$seen" = 1 ] || CMD_ARGS+=("${ours[@]}"); seen=1 ;;
      *)          CMD_ARGS+=("$1") ;;
    esac
    shift
  done
  if [ "$seen" = 0 ]; then
    echo "error: pass --config=experiments/<recipe>.py (and --workdir=DIR)" >&2
    return 2
  fi
}

# Runs (or with DRY_RUN=1 prints) the pretraining command. PYTHON overrides the interpreter.
launch() {
  local cmd=("${PYTHON:-python3}" -m seer_tf.bin.pretrain "$@")
  if [ "${DRY_RUN:-0}" = 1 ]; then
    [ -n "${TF_CONFIG:-}" ] && echo "TF_CONFIG=$TF_CONFIG"
    printf '%q ' "${cmd[@]}"; echo
    return 0
  fi
  exec "${cmd[@]}"
}
