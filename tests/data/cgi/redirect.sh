#!/bin/sh
# Redirects as QUERY_STRING says: "client" sends Status 302 with an absolute Location,
# "bare" an absolute Location alone, "local" a local Location alone (RFC 3875 §6.2.2: the
# gateway runs that path as a GET instead).
case $QUERY_STRING in
client) printf 'Status: 302 Found\r\nLocation: http://example.com/target\r\n\r\n' ;;
bare) printf 'Location: http://example.com/bare\r\n\r\n' ;;
local) printf 'Location: /cgi/env.sh/redirected?from=local\r\n\r\n' ;;
*) printf 'Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nunknown\n' ;;
esac
