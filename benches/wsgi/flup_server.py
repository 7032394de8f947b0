"""flup's prefork FastCGI server (what Django's runfcgi method=prefork ran) for the bench."""
import sys

from flup.server.fcgi_fork import WSGIServer

from app import application

port, workers = int(sys.argv[1]), int(sys.argv[2])
WSGIServer(application, bindAddress=("127.0.0.1", port),
           minSpare=workers, maxSpare=workers, maxChildren=workers).run()
