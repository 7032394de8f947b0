"""./manage.py runfcgi for Django, served by appserver: see README.md."""
