"""The seed's server: Flask + flask-sse (Redis pub/sub behind it), as the student project ran it
with `gunicorn --worker-class gevent app:app`. Used by the migration tests (tests/migration.rs,
tests/browser_migration.rs) and benches/anchors.sh, always the real flask-sse from PyPI
(tests/seed/venv.sh installs it).

Routes, as in the seed:
- GET /stream?channel=NAME   flask-sse's blueprint: one Redis SUBSCRIBE to NAME per stream
- POST /channel/send/NAME/TYPE   sse.publish({"message": body}, type=TYPE, channel=NAME)
- GET /wait/NAME, GET /join/NAME   the seed's pages (wait.html creates, join.html joins),
  rendered like the seed's templates with {{name}} = NAME

REDIS_URL (environment) names the Redis, default redis://127.0.0.1:6379/.
"""
import os

from flask import Flask, render_template, request
from flask_sse import sse

HERE = os.path.dirname(os.path.abspath(__file__))

app = Flask(__name__, template_folder=HERE)
app.config["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/")
app.register_blueprint(sse, url_prefix="/stream")


@app.route("/channel/send/<channel>/<type>", methods=["POST"])
def send(channel, type):
    # The seed wrote request.data (Python 2's str); as text it is the same body.
    sse.publish({"message": request.get_data(as_text=True)}, type=type, channel=channel)
    return "ok"


@app.route("/wait/<name>")
def wait(name):
    return render_template("wait.html", name=name)


@app.route("/join/<name>")
def join(name):
    return render_template("join.html", name=name)
