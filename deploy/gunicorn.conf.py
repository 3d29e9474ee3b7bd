# gunicorn -c deploy/gunicorn.conf.py "service.app:create_app()"
# The same settings `sealednotes serve` uses, read from the environment.
from service.config import Settings
from service.serving import gunicorn_options

globals().update(gunicorn_options(Settings.from_env()))
