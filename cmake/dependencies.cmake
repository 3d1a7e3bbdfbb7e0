# The library's external dependencies, found the same way by the main build (CMakeLists.txt)
# and the fuzz build (fuzz/CMakeLists.txt). cmake/liondgConfig.cmake.in lists them again with
# find_dependency for projects that use the installed package.
find_package(Torch REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(ZLIB REQUIRED)
find_package(Threads REQUIRED)
# Data sources: archives, image decoding, downloads and their checksums.
find_package(LibArchive REQUIRED)
find_package(JPEG REQUIRED)
find_package(PNG REQUIRED)
find_package(CURL REQUIRED)
find_package(OpenSSL REQUIRED COMPONENTS Crypto)
# toml++, used header-only by the one file that reads grid configs (src/experiment/grid.cpp).
find_path(TOMLPLUSPLUS_INCLUDE_DIR toml++/toml.h REQUIRED)

# What the library links besides libtorch.
set(LIONDG_LINK_DEPENDENCIES nlohmann_json::nlohmann_json ZLIB::ZLIB Threads::Threads LibArchive::LibArchive
    JPEG::JPEG PNG::PNG CURL::libcurl OpenSSL::Crypto)
