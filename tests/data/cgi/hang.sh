#!/bin/sh
# Never answers: tells its pid on stderr (a test watches its process group), leaves a
# background sleep behind, then sleeps ignoring SIGTERM, so only SIGKILL ends it.
echo "pid=$$" >&2
sleep 300 &
trap '' TERM
sleep 300
