"""Die yield and cost, and the TCO of a simple design, computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from hyperdex.explore.hardware.chip import die_yield, dies_per_wafer
from hyperdex.explore.hardware.tco import SECONDS_PER_YEAR, annuity, evaluate_server


def test_negative_binomial_yield_by_hand():
    # 100 mm2 = 1 cm2, D0 = 0.1 per cm2, alpha = 10: (1 + 0.01)^-10.
    y = die_yield(np.array([100.0]), np.array([0.1]), np.array([10.0]))
    assert float(y[0]) == pytest.approx(1.01**-10)
    assert float(y[0]) == pytest.approx(0.905287, rel=1e-5)


def test_dies_per_wafer_by_hand():
    # 10 x 10 mm dies, no scribe, 300 mm wafer: pi*150^2/100 - pi*300/sqrt(200) = 640.3.
    n = dies_per_wafer(np.array([100.0]), np.array([300.0]), np.array([0.0]))
    assert float(n[0]) == 640.0


def test_tco_of_a_simple_design_by_hand():
    one = lambda v: np.array([float(v)])  # noqa: E731
    c = {
        "server.packages": one(1),
        "package.chips": one(1),
        "tech.server.dcdc_efficiency": one(1),
        "tech.server.fans": one(0),
        "tech.server.fan_w": one(0),
        "tech.server.host_w": one(0),
        "tech.server.psu_efficiency": one(1),
        "tech.server.pcb_usd": one(0),
        "tech.server.host_usd": one(0),
        "tech.server.fan_usd": one(0),
        "tech.server.chassis_usd": one(0),
        "tech.server.nic_usd": one(0),
        "tech.server.psu_usd_per_w": one(0),
        "tech.server.max_power_w": one(1000),
        "tech.tco.interest_rate": one(0),
        "tech.tco.server_life_years": one(2),
        "tech.tco.server_opex_fraction": one(0.1),
        "tech.tco.dc_capex_usd_per_w": one(10),
        "tech.tco.dc_amortization_years": one(10),
        "tech.tco.dc_opex_usd_per_w_month": one(0.01),
        "tech.tco.avg_power_fraction": one(1),
        "tech.tco.pue": one(1.5),
        "tech.tco.electricity_usd_per_kwh": one(0.1),
    }
    chip = {"package_w": one(100), "package_cost_usd": one(1000)}
    out, ok, _ = evaluate_server(c, chip)
    # 100 W; capex 1000 over 2 years at 0% = 500/yr; opex 10% = 100; DC 10 $/W * 100 W over
    # 10 years = 100; DC opex 0.01 * 100 * 12 = 12; energy 0.1 kW * 1.5 * 8766 h * 0.1 $/kWh.
    energy = 0.1 * 1.5 * 24 * 365.25 * 0.1
    assert float(out["server_w"][0]) == 100.0
    assert float(out["tco_usd_per_year"][0]) == pytest.approx(500 + 100 + 100 + 12 + energy)
    assert float(out["tco_usd_per_chip_s"][0]) == pytest.approx((712 + energy) / SECONDS_PER_YEAR)
    assert ok.all()
    c["tech.server.max_power_w"] = one(50)
    _, ok, why = evaluate_server(c, chip)
    assert not ok[0] and "100 W" in why[0]


def test_annuity_with_interest():
    # 8% over 3 years: 0.08 / (1 - 1.08^-3) = 0.388034.
    assert float(annuity(np.array(0.08), np.array(3.0))) == pytest.approx(0.388034, rel=1e-5)
