// The Go net/http/fcgi peer of benches/peers.sh: the standard library only, serving the same
// three pages as appserver's examples/bench.rs on the unix socket named by its argument.
//
//	go build -o peer . && ./peer /tmp/go.sock
//
// - `/` (any other path too): "Hello, world\n" as text/plain, 13 bytes;
// - a path ending in `/big`: 10 MiB written in 64 KiB chunks of one package-level buffer;
// - a path ending in `/upload`: reads the body to the end and answers its length in decimal.
package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/fcgi"
	"os"
	"strconv"
	"strings"
)

const bigLen = 10 * 1024 * 1024

var chunk = []byte(strings.Repeat("x", 64*1024))

func handle(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	switch {
	case strings.HasSuffix(r.URL.Path, "/big"):
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Length", strconv.Itoa(bigLen))
		for left := bigLen; left > 0; left -= len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	case strings.HasSuffix(r.URL.Path, "/upload"):
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body := fmt.Sprintf("%d\n", n)
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", strconv.Itoa(len(body)))
		io.WriteString(w, body)
	default:
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", "13")
		io.WriteString(w, "Hello, world\n")
	}
}

func main() {
	if len(os.Args) != 2 {
		log.Fatal("usage: peer SOCKET")
	}
	os.Remove(os.Args[1])
	l, err := net.Listen("unix", os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(fcgi.Serve(l, http.HandlerFunc(handle)))
}
