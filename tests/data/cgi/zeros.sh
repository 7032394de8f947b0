#!/bin/sh
# QUERY_STRING (a decimal number) zero bytes, streamed by head(1).
n=$QUERY_STRING
case $n in
'' | *[!0-9]*)
    printf 'Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nnot a number\n'
    exit 0
    ;;
esac
printf 'Content-Type: application/octet-stream\r\n\r\n'
head -c "$n" /dev/zero
