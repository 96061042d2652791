"""Chip and package: die area, yield and cost, power, and what makes a design invalid.

Vectorised over design points: every argument is a column (numpy array) of a sweep. The
formulas and every constant's source are in docs/explorer.md and the technology YAML files.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

Columns = dict[str, np.ndarray]
MEMORY_KINDS = ("hbm2", "hbm2e", "hbm3", "gddr6", "ddr4")


def num(col: np.ndarray) -> np.ndarray:
    """A column as float; None ("derive it") and "auto" ("search it") as NaN."""
    if col.dtype == object:
        return np.array(
            [np.nan if v is None or v == "auto" else float(v) for v in col], dtype=float
        )
    return col.astype(float)


def dies_per_wafer(area_mm2: np.ndarray, wafer_mm: np.ndarray, scribe_mm: np.ndarray) -> np.ndarray:
    """Gross dies on a round wafer: wafer area over die area, less the partial dies along the
    edge (the usual first-order formula, e.g. Hennessy & Patterson, ch. 1)."""
    a = (np.sqrt(area_mm2) + scribe_mm) ** 2
    n = np.pi * (wafer_mm / 2) ** 2 / a - np.pi * wafer_mm / np.sqrt(2 * a)
    return np.floor(np.maximum(n, 0.0))


def die_yield(area_mm2: np.ndarray, d0_per_cm2: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Negative-binomial yield (1 + A*D0/alpha)^-alpha: defects cluster, so large dies lose
    less than the Poisson model says."""
    return (1.0 + area_mm2 / 100.0 * d0_per_cm2 / alpha) ** (-alpha)


def mem_constant(c: Columns, key: str) -> np.ndarray:
    """Per row, the technology's constant ``key`` for the package's memory kind (0 for none)."""
    kinds = c["package.mem_type"]
    out = np.zeros(len(kinds), dtype=float)
    for kind in MEMORY_KINDS:
        mask = kinds == kind
        if mask.any():
            out[mask] = num(c[f"tech.memory.{kind}.{key}"])[mask]
    return out


def chip_peak_tflops(c: Columns) -> np.ndarray:
    """The dense fp16 matrix rate; an LPU's follows from its MAC trees, lanes and clock."""
    peak = num(c["chip.peak_tflops"])
    if "device.mac_trees" in c:
        lpu = (
            2.0
            * num(c["device.mac_trees"])
            * num(c["device.mac_lanes"])
            * num(c["device.clock_mhz"])
            / 1e6
        )
        peak = np.where(np.isnan(peak), lpu, peak)
    return peak


def package_memory(c: Columns) -> tuple[np.ndarray, np.ndarray]:
    """(GB, GB/s) of off-chip memory per chip. An LPU's comes from its device preset."""
    chips = num(c["package.chips"])
    gb = num(c["package.mem_stacks"]) * num(c["package.mem_gb_per_stack"]) / chips
    gbps = num(c["package.mem_stacks"]) * num(c["package.mem_gbps_per_stack"]) / chips
    if "device.hbm_bandwidth_gbps" in c:
        gb = num(c["device.hbm_channels"]) * num(c["device.hbm_channel_bytes"]) / 1e9
        gbps = num(c["device.hbm_bandwidth_gbps"])
    return gb, gbps


def evaluate_chip(c: Columns) -> tuple[Columns, np.ndarray, list[Optional[str]]]:
    """Derived chip and package columns, a validity mask and, per row, why it is invalid."""
    n = len(c["chip.tech"])
    peak = chip_peak_tflops(c)
    chips = num(c["package.chips"])
    stacks = num(c["package.mem_stacks"])
    sram = num(c["chip.sram_mb"])
    links = num(c["chip.c2c_links"])
    mem_gb, mem_gbps = package_memory(c)
    phy = mem_constant(c, "phy_mm2_per_stack")
    logic = (
        peak * num(c["tech.chip.mm2_per_tflops"])
        + sram * num(c["tech.chip.mm2_per_mb_sram"])
        + stacks / chips * phy
        + links * num(c["tech.chip.mm2_per_c2c_link"])
    )
    derived_area = logic / (1.0 - num(c["tech.chip.other_area_fraction"]))
    given_area = num(c["chip.die_area_mm2"])
    area = np.where(np.isnan(given_area), derived_area, given_area)

    # HBM interface power: bits moved at peak times energy per bit.
    mem_w = mem_gbps * 8.0 * mem_constant(c, "pj_per_bit") / 1000.0
    derived_w = (
        peak * num(c["tech.chip.w_per_tflops"])
        + sram * num(c["tech.chip.w_per_mb_sram"])
        + links * num(c["tech.chip.w_per_c2c_link"])
        + mem_w
    )
    given_w = num(c["chip.tdp_w"])
    chip_w = np.where(np.isnan(given_w), derived_w, given_w)

    dpw = dies_per_wafer(area, num(c["tech.chip.wafer_diameter_mm"]), num(c["tech.chip.scribe_mm"]))
    y = die_yield(area, num(c["tech.chip.defect_density_per_cm2"]), num(c["tech.chip.yield_alpha"]))
    with np.errstate(divide="ignore", invalid="ignore"):
        die_cost = (
            num(c["tech.chip.wafer_cost_usd"])
            / (dpw * y)
            * (1.0 + num(c["tech.chip.test_cost_fraction"]))
        )
    mem_cost = stacks * num(c["package.mem_gb_per_stack"]) * mem_constant(c, "usd_per_gb")
    if "device.hbm_bandwidth_gbps" in c:
        mem_cost = np.where(stacks > 0, mem_cost, mem_gb * chips * mem_constant(c, "usd_per_gb"))
    silicon = chips * area + stacks * num(c["tech.package.mem_stack_area_mm2"])
    substrate = (
        silicon
        * num(c["tech.package.substrate_area_factor"])
        * num(c["tech.package.substrate_usd_per_mm2"])
    )
    on_interposer = mem_constant(c, "on_interposer") > 0
    interposer = np.where(
        on_interposer & (stacks > 0),
        silicon
        * num(c["tech.package.interposer_area_factor"])
        * num(c["tech.package.interposer_usd_per_mm2"]),
        0.0,
    )
    derived_pkg = (chips * die_cost + mem_cost + substrate + interposer) / num(
        c["tech.package.assembly_yield"]
    )
    price = num(c["package.price_usd"])
    pkg_cost = np.where(np.isnan(price), derived_pkg, price)

    reasons: list[Optional[str]] = [None] * n
    valid = np.ones(n, dtype=bool)
    # A priced part exists: reticle, power density and wafer checks are for derived designs.
    derived = np.isnan(price)
    checks = [
        (
            ~np.isfinite(peak) | (peak <= 0),
            lambda i: "no peak_tflops (nor an LPU device to derive it)",
        ),
        (
            derived & (area > num(c["tech.chip.max_die_area_mm2"])),
            lambda i: (
                f"die of {area[i]:.0f} mm2 exceeds the reticle limit "
                f"{num(c['tech.chip.max_die_area_mm2'])[i]:.0f} mm2"
            ),
        ),
        (
            derived & (chip_w / area > num(c["tech.chip.max_power_density_w_per_mm2"])),
            lambda i: (
                f"power density {chip_w[i] / area[i]:.2f} W/mm2 exceeds "
                f"{num(c['tech.chip.max_power_density_w_per_mm2'])[i]:.2f} W/mm2"
            ),
        ),
        (derived & (dpw < 1), lambda i: "no whole die fits on the wafer"),
        ((mem_gb <= 0) & (sram <= 0), lambda i: "the chip has neither off-chip memory nor SRAM"),
    ]
    for mask, why in checks:
        for i in np.flatnonzero(mask & valid):
            reasons[i] = why(i)
        valid &= ~mask
    out = {
        "peak_tflops": peak,
        "die_area_mm2": area,
        "dies_per_wafer": dpw,
        "die_yield": y,
        "die_cost_usd": die_cost,
        "mem_gb_per_chip": mem_gb,
        "mem_gbps_per_chip": mem_gbps,
        "chip_w": chip_w,
        "package_cost_usd": pkg_cost,
        "package_w": chips * chip_w,
    }
    return out, valid, reasons
