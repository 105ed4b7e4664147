# Shared helpers of the launch scripts (sourced, not run). Uses only bash builtins, so a dry
# run works even where PATH has none of the tools.

die() {
  echo "${SCRIPT_NAME}: error: $*" >&2
  echo "Run 'launch/${SCRIPT_NAME} --help' for the flags." >&2
  exit 2
}

quote() {  # Shell-quotes one word only when it needs it, so printed commands stay readable.
  local word="$1"
  if [[ "$word" =~ ^[-A-Za-z0-9_./:=@%+,~]+$ ]]; then
    printf '%s' "$word"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

run() {  # Prints a command, then runs it unless --dry-run.
  local line="+" arg
  for arg in "$@"; do line+=" $(quote "$arg")"; done
  printf '%s\n' "$line"
  if (( ! DRY_RUN )); then "$@"; fi
}

EXIT_PREEMPTED=3  # main's status after SIGTERM/SIGINT: latest checkpoint saved, not finished.
PREEMPTED_MESSAGE="preempted (status 3): the latest checkpoint is saved in the workdir; run the \
same command again to resume."

run_training() {  # `run` for the training command: signals reach it, and status 3 is explained.
  local line="+" arg child status
  for arg in "$@"; do line+=" $(quote "$arg")"; done
  printf '%s\n' "$line"
  if (( DRY_RUN )); then return 0; fi
  # In the background so that this shell can pass a SIGTERM sent to it (a scheduler stopping
  # the job) on to Python. A terminal's Ctrl-C already reaches Python itself (same process
  # group), so SIGINT is passed on as SIGTERM, which Python ignores once it is stopping.
  "$@" &
  child=$!
  trap 'kill -TERM "$child" 2> /dev/null || true' TERM INT
  while :; do
    status=0
    wait "$child" || status=$?
    kill -0 "$child" 2> /dev/null || break  # Still running: a trapped signal ended `wait`.
  done
  trap - TERM INT
  if (( status == EXIT_PREEMPTED )); then
    echo "${SCRIPT_NAME}: ${PREEMPTED_MESSAGE}" >&2
  fi
  return "$status"
}
