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
