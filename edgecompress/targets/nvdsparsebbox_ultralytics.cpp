// DeepStream gst-nvinfer bounding-box parser for the Ultralytics YOLO detection engines of an edgecompress Jetson
// bundle (YOLOv8, YOLO11, YOLO26's one-to-many head). The engine has one output, output0, of shape
// (4 + classes, anchors) once nvinfer drops the batch: rows 0-3 are the box centre x, y, width and height in pixels
// of the network input, the following rows each class's score after the sigmoid. The engine does no NMS: nvinfer
// clusters the boxes this returns (cluster-mode=2 in the bundle's config).
//
// Build on the device (DeepStream and CUDA headers installed with DeepStream), one line:
//   g++ -std=c++17 -O2 -shared -fPIC -I/opt/nvidia/deepstream/deepstream/sources/includes
//       -I/usr/local/cuda/include nvdsparsebbox_ultralytics.cpp -o libnvdsparsebbox_ultralytics.so

#include <algorithm>
#include <cstring>
#include <iostream>
#include <vector>

#include "nvdsinfer_custom_impl.h"

extern "C" bool NvDsInferParseUltralytics(std::vector<NvDsInferLayerInfo> const& outputLayersInfo,
                                          NvDsInferNetworkInfo const& networkInfo,
                                          NvDsInferParseDetectionParams const& detectionParams,
                                          std::vector<NvDsInferParseObjectInfo>& objectList)
{
    const NvDsInferLayerInfo* output = nullptr;
    for (const auto& layer : outputLayersInfo) {
        if (layer.layerName != nullptr && std::strcmp(layer.layerName, "output0") == 0) {
            output = &layer;
        }
    }
    if (output == nullptr || output->dataType != FLOAT || output->inferDims.numDims != 2) {
        std::cerr << "NvDsInferParseUltralytics: no FP32 output0 of shape (4 + classes, anchors)" << std::endl;
        return false;
    }
    const unsigned int classes = output->inferDims.d[0] - 4;
    const unsigned int anchors = output->inferDims.d[1];
    if (classes != detectionParams.numClassesConfigured) {
        std::cerr << "NvDsInferParseUltralytics: the engine has " << classes << " classes, the config "
                  << detectionParams.numClassesConfigured << " (num-detected-classes)" << std::endl;
        return false;
    }
    const float* data = static_cast<const float*>(output->buffer);
    const float width = static_cast<float>(networkInfo.width);
    const float height = static_cast<float>(networkInfo.height);
    objectList.clear();
    for (unsigned int a = 0; a < anchors; ++a) {
        unsigned int best = 0;
        float score = data[4 * anchors + a];
        for (unsigned int c = 1; c < classes; ++c) {
            const float s = data[(4 + c) * anchors + a];
            if (s > score) {
                score = s;
                best = c;
            }
        }
        if (score < detectionParams.perClassPreclusterThreshold[best]) {
            continue;
        }
        const float cx = data[a], cy = data[anchors + a];
        const float w = data[2 * anchors + a], h = data[3 * anchors + a];
        const float x1 = std::clamp(cx - w / 2, 0.0f, width), y1 = std::clamp(cy - h / 2, 0.0f, height);
        const float x2 = std::clamp(cx + w / 2, 0.0f, width), y2 = std::clamp(cy + h / 2, 0.0f, height);
        if (x2 - x1 < 1 || y2 - y1 < 1) {
            continue;
        }
        NvDsInferParseObjectInfo object;
        object.classId = best;
        object.detectionConfidence = score;
        object.left = x1;
        object.top = y1;
        object.width = x2 - x1;
        object.height = y2 - y1;
        objectList.push_back(object);
    }
    return true;
}

CHECK_CUSTOM_PARSE_FUNC_PROTOTYPE(NvDsInferParseUltralytics);
