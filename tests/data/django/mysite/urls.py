from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("blog/<slug:slug>/", views.article, name="article"),
    path("upload/", views.upload, name="upload"),
    path("stream/", views.stream, name="stream"),
    path("file/", views.file, name="file"),
    path("raise/", views.fail, name="raise"),
    path("slow/", views.slow, name="slow"),
    path("spin/", views.spin, name="spin"),
    path("hold-gil/", views.hold_gil, name="hold-gil"),
    path("admin/", admin.site.urls),
]
