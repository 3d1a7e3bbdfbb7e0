#pragma once
// Umbrella header of the liondg library.

#include <liondg/data/batcher.h>
#include <liondg/data/dataset.h>
#include <liondg/errors.h>
#include <liondg/experiment/decoupling.h>
#include <liondg/experiment/run.h>
#include <liondg/experiment/theory.h>
#include <liondg/init/init.h>
#include <liondg/init/methods.h>
#include <liondg/init/plan.h>
#include <liondg/models/buffers.h>
#include <liondg/models/densenet_ds.h>
#include <liondg/models/ds_model.h>
#include <liondg/models/observe.h>
#include <liondg/models/registry.h>
#include <liondg/models/resnet_ds.h>
#include <liondg/train/progress.h>
#include <liondg/train/trainer.h>
#include <liondg/util/fs.h>
