"""The example's Django project: settings, URLs, the WSGI application."""
