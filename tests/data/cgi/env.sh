#!/bin/sh
# The CGI environment, one NAME=value per line in byte order, then the request body as
# received on stdin.
printf 'Content-Type: text/plain\r\n\r\n'
env | LC_ALL=C sort
printf -- '--- stdin\n'
cat
