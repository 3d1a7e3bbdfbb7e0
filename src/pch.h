// Precompiled header for the library, the tool and the tests: the heavy, stable
// third-party headers only. Project headers stay narrow and include what they use.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>
#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <string>
#include <vector>
