// Reference outputs of the faceres graph from the real TensorFlow.js runtime (pure-JS CPU
// backend), for tests/test_faceres.py. Called by benchmarks/faceres_reference.py, which makes the
// inputs and packs the result; run that, not this file.
//
//   node benchmarks/faceres_reference.mjs TFJS_DIR MODEL_JSON INPUTS_U8 COUNT OUTPUT_JSON
//
// TFJS_DIR     folder whose node_modules holds @tensorflow/tfjs-core, -backend-cpu, -converter
//              (4.22.0; a scratch folder, never this repository)
// MODEL_JSON   faceres.json (faceres.bin beside it)
// INPUTS_U8    COUNT x 224 x 224 x 3 uint8 RGB crops, raw bytes
// OUTPUT_JSON  {"descriptor": [[1024]], "male_probability": [..], "age_softmax": [[100]]}
//
// Preprocessing is the author's and facedeid's (facedeid.models.faceres.preprocess_uint8):
// RGB -> BGR, minus the ImageNet means, float32, so both sides feed the graph identical inputs.
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const [tfjsDir, modelJson, inputsPath, countText, outputPath] = process.argv.slice(2);
if (!outputPath) {
  console.error('usage: node faceres_reference.mjs TFJS_DIR MODEL_JSON INPUTS_U8 COUNT OUTPUT_JSON');
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(tfjsDir), 'package.json'));
const tf = require('@tensorflow/tfjs-core');
require('@tensorflow/tfjs-backend-cpu');
const converter = require('@tensorflow/tfjs-converter');

await tf.setBackend('cpu');
const model = JSON.parse(readFileSync(modelJson, 'utf8'));
const folder = path.dirname(modelJson);
const weightSpecs = [];
const shards = [];
for (const group of model.weightsManifest) {
  weightSpecs.push(...group.weights);
  for (const shard of group.paths) shards.push(readFileSync(path.join(folder, shard)));
}
const weights = Buffer.concat(shards);
const weightData = weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength);
const graph = await converter.loadGraphModel(tf.io.fromMemory({
  modelTopology: model.modelTopology, weightSpecs, weightData, format: model.format,
  generatedBy: model.generatedBy, convertedBy: model.convertedBy, signature: model.signature,
}));

const count = Number(countText);
const pixels = new Uint8Array(readFileSync(inputsPath));
if (pixels.length !== count * 224 * 224 * 3) throw new Error(`expected ${count} crops of 224x224x3`);
const rgb = tf.tensor4d(Float32Array.from(pixels), [count, 224, 224, 3], 'float32');
const input = tf.sub(tf.reverse(rgb, -1), tf.tensor1d([103.939, 116.779, 123.68], 'float32'));
const [descriptor, male, age] = graph.execute(
  input, ['global_pooling/Mean', 'gender_pred/Sigmoid', 'age_pred/Softmax']);
writeFileSync(outputPath, JSON.stringify({
  tfjs_version: tf.version_core,
  backend: tf.getBackend(),
  descriptor: descriptor.arraySync(),
  male_probability: tf.reshape(male, [-1]).arraySync(),
  age_softmax: age.arraySync(),
}));
console.log(`tfjs ${tf.version_core} (${tf.getBackend()}): ${count} inputs -> ${outputPath}`);
