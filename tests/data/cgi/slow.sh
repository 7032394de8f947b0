#!/bin/sh
# Answers a header and one line at once (unbuffered through nginx), then sleeps with a
# background sleep beside it: for client aborts. Tells its pid on stderr.
echo "pid=$$" >&2
sleep 300 &
printf 'Content-Type: text/plain\r\nX-Accel-Buffering: no\r\n\r\nstarted\n'
sleep 300
