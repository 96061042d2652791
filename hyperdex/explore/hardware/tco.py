"""Server and datacentre: what a server of these packages costs to buy, house and power.

Total cost of ownership per year = server capital (amortised with interest over its life)
+ server opex + datacentre capital per watt (amortised over the building's life) + datacentre
opex per watt + electricity (at the PUE). The structure follows Barroso, Hölzle and
Ranganathan, "The Datacenter as a Computer" (3rd ed., 2019), ch. 6, as Chiplet Cloud does.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .chip import Columns, num

SECONDS_PER_YEAR = 365.25 * 24 * 3600


def annuity(rate: np.ndarray, years: np.ndarray) -> np.ndarray:
    """Yearly payment that repays 1 dollar over ``years`` at ``rate`` (1/years at rate 0)."""
    rate = np.asarray(rate, dtype=float)
    safe = np.where(rate > 0, rate, 1.0)
    paid = safe / (1.0 - (1.0 + safe) ** (-years))
    return np.where(rate > 0, paid, 1.0 / years)


def evaluate_server(c: Columns, chip: Columns) -> tuple[Columns, np.ndarray, list[Optional[str]]]:
    """Server power, capex and TCO per year, per chip and per chip-second."""
    packages = num(c["server.packages"])
    chips = num(c["package.chips"])
    power = (
        packages * chip["package_w"] / num(c["tech.server.dcdc_efficiency"])
        + num(c["tech.server.fans"]) * num(c["tech.server.fan_w"])
        + num(c["tech.server.host_w"])
    ) / num(c["tech.server.psu_efficiency"])
    capex = (
        packages * chip["package_cost_usd"]
        + num(c["tech.server.pcb_usd"])
        + num(c["tech.server.host_usd"])
        + num(c["tech.server.fans"]) * num(c["tech.server.fan_usd"])
        + num(c["tech.server.chassis_usd"])
        + num(c["tech.server.nic_usd"])
        + num(c["tech.server.psu_usd_per_w"]) * power
    )
    rate = num(c["tech.tco.interest_rate"])
    server_year = capex * annuity(rate, num(c["tech.tco.server_life_years"]))
    server_opex = capex * num(c["tech.tco.server_opex_fraction"])
    dc_capex = (
        power
        * num(c["tech.tco.dc_capex_usd_per_w"])
        * annuity(rate, num(c["tech.tco.dc_amortization_years"]))
    )
    dc_opex = power * num(c["tech.tco.dc_opex_usd_per_w_month"]) * 12.0
    energy = (
        power
        / 1000.0
        * num(c["tech.tco.avg_power_fraction"])
        * num(c["tech.tco.pue"])
        * 24
        * 365.25
        * num(c["tech.tco.electricity_usd_per_kwh"])
    )
    tco_year = server_year + server_opex + dc_capex + dc_opex + energy
    per_chip = tco_year / (packages * chips)
    n = len(power)
    reasons: list[Optional[str]] = [None] * n
    too_hot = power > num(c["tech.server.max_power_w"])
    for i in np.flatnonzero(too_hot):
        reasons[i] = (
            f"server draws {power[i]:.0f} W, above the "
            f"{num(c['tech.server.max_power_w'])[i]:.0f} W a server may draw"
        )
    out = {
        "chips_per_server": packages * chips,
        "server_w": power,
        "server_capex_usd": capex,
        "tco_server_usd_per_year": server_year,
        "tco_server_opex_usd_per_year": server_opex,
        "tco_dc_capex_usd_per_year": dc_capex,
        "tco_dc_opex_usd_per_year": dc_opex,
        "tco_energy_usd_per_year": energy,
        "tco_usd_per_year": tco_year,
        "tco_usd_per_chip_year": per_chip,
        "tco_usd_per_chip_s": per_chip / SECONDS_PER_YEAR,
    }
    return out, ~too_hot, reasons
