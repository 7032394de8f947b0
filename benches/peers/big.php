<?php
// benches/peers.sh, php-fpm: `/big`, 10 MiB echoed in 64 KiB chunks of one string.
$chunk = str_repeat('x', 65536);
header('Content-Type: application/octet-stream');
header('Content-Length: ' . (160 * 65536));
for ($i = 0; $i < 160; $i++) {
    echo $chunk;
}
