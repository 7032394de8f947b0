#!/bin/sh
# A status with a reason phrase of the script's own, which must reach the client as sent.
printf 'Status: 403 Access Denied By Policy\r\nContent-Type: text/plain\r\n\r\ndenied\n'
