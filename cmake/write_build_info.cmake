# Writes liondg/build_info.h with the version and the current git revision
# (suffix -dirty for uncommitted changes). Runs at every build; rewrites the
# header only when its content changes, so nothing recompiles needlessly.
# Inputs: -DSRC=<source dir> -DOUT=<header path> -DVERSION=<project version>
execute_process(COMMAND git rev-parse --short=12 HEAD WORKING_DIRECTORY "${SRC}"
  OUTPUT_VARIABLE rev OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR NOT rev)
  set(rev "unknown")
else()
  execute_process(COMMAND git status --porcelain --untracked-files=no WORKING_DIRECTORY "${SRC}"
    OUTPUT_VARIABLE dirty OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(dirty)
    set(rev "${rev}-dirty")
  endif()
endif()
set(content "#pragma once
// Generated at build time by cmake/write_build_info.cmake; do not edit.
#define LIONDG_VERSION \"${VERSION}\"
#define LIONDG_GIT_REVISION \"${rev}\"
")
set(old "")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
endif()
if(NOT old STREQUAL content)
  file(WRITE "${OUT}" "${content}")
endif()
