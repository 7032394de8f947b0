#!/bin/sh
# The smallest CGI script: for benchmarks and the NPH check (copied as nph-hello.sh).
printf 'Content-Type: text/plain\r\n\r\nhello\n'
