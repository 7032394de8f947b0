#!/bin/sh
# The SHA-256 (hex) of the request body as received on stdin.
printf 'Content-Type: text/plain\r\n\r\n'
sha256sum | cut -d' ' -f1
