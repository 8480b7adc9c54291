"""`python -m services.facilitator CONFIG.json --port N`: one facilitator process."""

from services.facilitator.app import create_app
from services.facilitator.config import FacilitatorConfig
from services.process import serve_main

if __name__ == "__main__":
    serve_main(__doc__, FacilitatorConfig.load, create_app)
