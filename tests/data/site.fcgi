#!/bin/sh
# What mod_fcgid runs for every process it spawns: the listening socket is fd 0, so
# appserver gets neither host/port nor socket. mod_fcgid runs this script by its absolute
# path, so "$0" names it: `touch site.fcgi` reloads appserver (mod_fcgid itself does not
# restart a process whose script was touched). tests/process.rs fills in the path of
# appserver and the method.
exec @APPSERVER@ runfcgi method=@METHOD@ daemonize=false debug=true touch_reload="$0"
