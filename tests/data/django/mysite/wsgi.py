"""WSGI config for the test site, as `startproject` writes it.

The tests serve `application` wrapped in wsgiref.validate.validator when
APPSERVER_TEST_VALIDATE is set, so Django's side of PEP 3333 is checked too.
"""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = get_wsgi_application()

if os.environ.get("APPSERVER_TEST_VALIDATE"):
    from wsgiref.validate import validator

    application = validator(application)
