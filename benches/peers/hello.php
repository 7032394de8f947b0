<?php
// benches/peers.sh, php-fpm: `/`, 13 bytes of text/plain.
header('Content-Type: text/plain');
header('Content-Length: 13');
echo "Hello, world\n";
