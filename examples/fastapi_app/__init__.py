"""batchkit studio: a product-video app built only on batchkit's public API.

``uvicorn examples.fastapi_app.main:app`` (or ``make web``) serves it; see ``main.py``.
"""
