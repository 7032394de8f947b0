#!/bin/sh
# What mod_fcgid runs for every process it spawns: the listening socket is fd 0, so
# appserver gets neither host/port nor socket. tests/process.rs fills in the path of
# appserver and the method.
exec @APPSERVER@ runfcgi method=@METHOD@ daemonize=false debug=true
