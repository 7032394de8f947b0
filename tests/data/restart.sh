#!/bin/bash
# The restart script of Django's FastCGI documentation (the seed document), with appserver
# in place of manage.py. tests/process.rs runs it unchanged except that the project
# directory and the program come from the environment instead of being edited in.

# Replace these three settings.
PROJDIR="${PROJDIR:?}"
PIDFILE="$PROJDIR/mysite.pid"
SOCKET="$PROJDIR/mysite.sock"

cd $PROJDIR
if [ -f $PIDFILE ]; then
    kill `cat -- $PIDFILE`
    rm -f -- $PIDFILE
fi

exec /usr/bin/env - \
  "${APPSERVER:?}" runfcgi socket=$SOCKET pidfile=$PIDFILE
