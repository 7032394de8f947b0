#!/bin/sh
# Three Set-Cookie header fields, which must stay three, in order.
printf 'Content-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nSet-Cookie: c=3\r\n\r\n'
printf 'cookies\n'
