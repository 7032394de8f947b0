<?php
// benches/peers.sh, php-fpm: `/upload` reads the body to the end and answers its length.
// The pool sets enable_post_data_reading=off, so php://input streams from the web server in
// 64 KiB reads instead of being buffered (and size-limited by post_max_size) first.
$in = fopen('php://input', 'rb');
$n = 0;
while (!feof($in)) {
    $n += strlen(fread($in, 65536));
}
$body = $n . "\n";
header('Content-Type: text/plain');
header('Content-Length: ' . strlen($body));
echo $body;
