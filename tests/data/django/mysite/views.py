"""Views that exercise what a Django site needs from its server."""
import ctypes
import hashlib
import os
import time

from django.http import FileResponse, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt


def index(request):
    """Reversed URLs: they carry the SCRIPT_NAME the server resolved."""
    return HttpResponse(
        "article={}\nscript_name={}\npath_info={}\npid={}\n".format(
            reverse("article", args=["hello"]),
            request.META.get("SCRIPT_NAME", ""),
            request.path_info,
            os.getpid(),
        ),
        content_type="text/plain",
    )


def article(request, slug):
    return HttpResponse(f"article {slug} at {request.path}\n", content_type="text/plain")


@csrf_exempt
def upload(request):
    """sha256 of the uploaded file, and whether Django spooled it to disk."""
    f = request.FILES["file"]
    h = hashlib.sha256()
    for chunk in f.chunks():
        h.update(chunk)
    return JsonResponse(
        {
            "name": f.name,
            "size": f.size,
            "sha256": h.hexdigest(),
            "on_disk": hasattr(f, "temporary_file_path"),
        }
    )


def stream(request):
    """Chunks 0.3 s apart: they must reach the client as they are made."""

    def chunks():
        for i in range(4):
            yield f"chunk {i} at {time.monotonic():.3f}\n"
            time.sleep(0.3)

    response = StreamingHttpResponse(chunks(), content_type="text/plain")
    # What a Django site streaming through nginx sets: pass each chunk on at once.
    response["X-Accel-Buffering"] = "no"
    return response


def file(request):
    path = os.path.join(os.path.dirname(__file__), "static", "mysite", "site.css")
    return FileResponse(open(path, "rb"), content_type="text/css")


def fail(request):
    raise RuntimeError("this view fails on purpose")


# Slow views for the slow log (slowlog=): each waits in a named function, which the logged
# Python stack must show; `s` is the number of seconds.


def slow_inner(seconds):
    time.sleep(seconds)


def slow(request):
    """Sleeps (GIL released) in slow_inner."""
    slow_inner(float(request.GET.get("s", "3")))
    return HttpResponse("slept\n", content_type="text/plain")


def spin_inner(seconds):
    end = time.monotonic() + seconds
    turns = 0
    while time.monotonic() < end:
        turns += 1
    return turns


def spin(request):
    """A CPU-bound loop in spin_inner: the GIL is held, let go only at Python's switch interval."""
    spin_inner(float(request.GET.get("s", "3")))
    return HttpResponse("spun\n", content_type="text/plain")


def hold_gil(request):
    """C code that holds the GIL throughout: libc's sleep() called through ctypes.PyDLL,
    which (unlike CDLL) does not release the GIL around the call."""
    ctypes.PyDLL(None).sleep(int(request.GET.get("s", "3")))
    return HttpResponse("held\n", content_type="text/plain")
