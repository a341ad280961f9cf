#include <catch2/catch.hpp>

#include "sim/units.hpp"

using namespace moesim::sim;

TEST_CASE("Times parse to exact picoseconds", "[sim][units]") {
  CHECK(parse_time("2us").count_ps() == 2'000'000);
  CHECK(parse_time("1.5ms").count_ps() == 1'500'000'000);
  CHECK(parse_time("250 ns").count_ps() == 250'000);
  CHECK(parse_time("3ps").count_ps() == 3);
  CHECK(parse_time("1s").count_ps() == 1'000'000'000'000);
  CHECK(parse_time("10min").count_ps() == 600'000'000'000'000);
  CHECK(parse_time("1.5 h").count_ps() == 5'400'000'000'000'000);
  CHECK(parse_time("0.1us").count_ps() == 100'000);  // exact, no binary rounding
  CHECK(parse_time("1e3ns").count_ps() == 1'000'000);
  CHECK(parse_time("0us").count_ps() == 0);
}

TEST_CASE("Sizes parse with decimal and binary prefixes", "[sim][units]") {
  CHECK(parse_bytes("64KiB").count() == 65'536);
  CHECK(parse_bytes("4096B").count() == 4'096);
  CHECK(parse_bytes("1.5GB").count() == 1'500'000'000);
  CHECK(parse_bytes("2GiB").count() == 2'147'483'648);
  CHECK(parse_bytes("1.5KiB").count() == 1'536);
  CHECK_THROWS_WITH(parse_bytes("0.3B"), Catch::Contains("not a whole number of bytes"));
}

TEST_CASE("Bandwidths parse in bytes and bits per second", "[sim][units]") {
  CHECK(parse_bandwidth("450GB/s").bytes_per_s() == 450'000'000'000);
  CHECK(parse_bandwidth("400Gbps").bytes_per_s() == 50'000'000'000);  // 400e9 / 8
  CHECK(parse_bandwidth("3.35TB/s").bytes_per_s() == 3'350'000'000'000);
  CHECK(parse_bandwidth("100 Gb/s").bytes_per_s() == 12'500'000'000);
  CHECK(parse_bandwidth("1GiB/s").bytes_per_s() == 1'073'741'824);
}

TEST_CASE("FLOP rates and counts parse", "[sim][units]") {
  CHECK(parse_flop_rate("989.4TFLOP/s").flop_per_s() == 989'400'000'000'000);
  CHECK(parse_flop_rate("1.979PFLOPS").flop_per_s() == 1'979'000'000'000'000);
  CHECK(parse_count("7168") == 7168);
  CHECK_THROWS_WITH(parse_count("7168.5"), "expected a whole number like '7168', got '7168.5'");
  CHECK_THROWS_WITH(parse_count("-1"), "expected a whole number like '7168', got '-1'");
}

TEST_CASE("Powers parse to watts", "[sim][units]") {
  CHECK(parse_power("700W") == 700.0);
  CHECK(parse_power("10.2kW") == 10'200.0);
  CHECK(parse_power("1.5 MW") == 1'500'000.0);
  CHECK(parse_power("0.25W") == 0.25);
  CHECK_THROWS_WITH(parse_power("700"), "expected a power like '700W' or '10.2kW', got '700' (the unit is missing)");
  CHECK_THROWS_WITH(parse_power("7kw"), "expected a power like '700W' or '10.2kW', got '7kw' (unknown unit 'kw')");
}

TEST_CASE("Bad quantities say what was expected and what was found", "[sim][units]") {
  SECTION("missing unit") {
    CHECK_THROWS_WITH(parse_bandwidth("400"),
                      "expected a bandwidth like '400Gbps' or '50GB/s', got '400' (the unit is missing)");
    CHECK_THROWS_WITH(parse_time("2"), Catch::Contains("(the unit is missing)"));
  }
  SECTION("unknown unit") {
    CHECK_THROWS_WITH(parse_time("2 fortnights"), Catch::Contains("unknown unit 'fortnights'"));
    CHECK_THROWS_WITH(parse_bandwidth("450gb/s"), Catch::Contains("unknown unit 'gb/s'"));
  }
  SECTION("not a number") {
    CHECK_THROWS_WITH(parse_bytes("lots"), "expected a size like '64KiB' or '4096B', got 'lots'");
    CHECK_THROWS_WITH(parse_time(""), Catch::Contains("expected a time"));
  }
  SECTION("out of range") {
    CHECK_THROWS_WITH(parse_time("1e40s"), Catch::Contains("out of range"));
  }
}

TEST_CASE("Quantities print in their shortest exact form", "[sim][units]") {
  CHECK(format_time(Time::ps(1'500'000'000)) == "1.5ms");
  CHECK(format_time(Time::us(2)) == "2us");
  CHECK(format_time(Time::ps(1'234)) == "1.234ns");
  CHECK(format_time(Time::ps(1'234'567)) == "1234.567ns");
  CHECK(format_time(Time::zero()) == "0ps");
  CHECK(format_bytes(Bytes(65'536)) == "64KiB");
  CHECK(format_bytes(Bytes(1'536)) == "1.5KiB");
  CHECK(format_bandwidth(Bandwidth(50'000'000'000)) == "50GB/s");
  CHECK(format_flop_rate(FlopRate(989'400'000'000'000)) == "989.4TFLOP/s");
  CHECK(format_us(Time::ps(1'234'000'500)) == "1234.000500");
  CHECK(format_us(Time::ps(-5)) == "-0.000005");
  SECTION("parse(format(x)) == x") {
    for (const auto ps : {1LL, 999LL, 1'000LL, 1'500'000'000LL, 123'456'789'012LL})
      CHECK(parse_time(format_time(Time::ps(ps))).count_ps() == ps);
  }
}

TEST_CASE("Transfers round up to the picosecond", "[sim][units]") {
  // 1 byte at 3 B/s = 333333333333.33 ps -> 333333333334 ps.
  CHECK(transfer_time(Bytes(1), Bandwidth(3)).count_ps() == 333'333'333'334);
  // 2,048,000 B at 100 GB/s = 20.48 us exactly.
  CHECK(transfer_time(Bytes(2'048'000), Bandwidth(100'000'000'000)).count_ps() == 20'480'000);
  CHECK(transfer_time(Bytes(0), Bandwidth(1)).count_ps() == 0);
  CHECK(compute_time(1, FlopRate(1'000'000'000'000'000)).count_ps() == 1);  // 0.001 ps -> 1 ps
}
