"""`./manage.py runfcgi [key=value ...]`: Django's FastCGI command, served by appserver.

Fills in `app=wsgi`, `module=` (from WSGI_APPLICATION), `pythonpath=` (the project
directory) and `virtualenv=` (the running venv), unless given, then replaces this process
with `appserver runfcgi ...`.
"""
import os
import shutil
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


def wsgi_module(wsgi_application):
    """`mysite.wsgi.application` -> `mysite.wsgi:application`."""
    module, _, callable_name = wsgi_application.rpartition(".")
    if not module:
        raise CommandError(
            f"WSGI_APPLICATION {wsgi_application!r} is not MODULE.CALLABLE"
        )
    return f"{module}:{callable_name}"


def appserver_args(options, wsgi_application, project_dir, venv):
    """The appserver command line for `runfcgi options` (a list of `key=value` strings)."""
    if options == ["help"]:
        return ["runfcgi", "help"]
    given = set()
    for item in options:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise CommandError(f"{item!r} is not key=value (run: ./manage.py runfcgi help)")
        given.add(key)
    args = ["runfcgi"] + list(options)
    if "app" not in given:
        args.append("app=wsgi")
    if "module" not in given:
        if not wsgi_application:
            raise CommandError("settings.WSGI_APPLICATION is not set: give module=")
        args.append("module=" + wsgi_module(wsgi_application))
    if "pythonpath" not in given:
        args.append("pythonpath=" + project_dir)
    if "virtualenv" not in given and venv:
        args.append("virtualenv=" + venv)
    return args


class Command(BaseCommand):
    help = (
        "Serves this project with appserver over FastCGI, SCGI or AJP13, as runfcgi did: "
        "./manage.py runfcgi method=prefork socket=/tmp/mysite.sock. "
        "'./manage.py runfcgi help' lists the options."
    )
    # appserver imports the project itself; checking it here would import it twice.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("options", nargs="*", metavar="key=value")

    def handle(self, *args, **opts):
        binary = os.environ.get("APPSERVER_BIN") or shutil.which("appserver")
        if not binary:
            raise CommandError(
                "appserver not found: put it on PATH or set APPSERVER_BIN "
                "(build it with: cargo build --release --features wsgi)"
            )
        venv = sys.prefix if sys.prefix != sys.base_prefix else None
        project_dir = os.path.dirname(os.path.abspath(sys.argv[0]))
        argv = [binary] + appserver_args(
            opts["options"],
            getattr(settings, "WSGI_APPLICATION", None),
            project_dir,
            venv,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(binary, argv)
