"""The production ASGI application: ``uvicorn service.api.asgi:app``. Jobs go to Celery workers."""

from service.api.main import create_app
from service.dispatch import celery_broker_check, celery_dispatch

app = create_app(dispatch=celery_dispatch, broker_check=celery_broker_check)
