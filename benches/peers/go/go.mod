module appserver.bench/peer

go 1.19
