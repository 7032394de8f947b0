"""Views that exercise what a Django site needs from its server."""
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
