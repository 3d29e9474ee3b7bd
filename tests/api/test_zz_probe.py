import logging
from tests.helpers import Api, StackHelper
from service.config import Budgets


def test_probe(make_app, caplog) -> None:
    caplog.set_level(logging.ERROR)
    app = make_app(budgets=Budgets(break_glass_per_day=0))
    api = Api(app.test_client()); stack = StackHelper(app, api)
    t = stack.tenant()
    dr = stack.clinician(t)
    pid = stack.patient(t)
    def show(r):
        print(r.status_code, r.headers.get("Content-Type"), r.get_data(as_text=True)[:200])
        for rec in caplog.records:
            if rec.exc_info:
                print("   EXC", rec.exc_info[0].__name__, rec.exc_info[1])
        caplog.clear()
    show(api.post(f"/v1/patients/{pid}/break-glass", dr.token, {"reason": "a" * 25}))
