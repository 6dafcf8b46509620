"""Sign in, sign out and sign up: Django's auth views plus a small signup view."""
