"""The seed tutorials' own training loops, as the tutorials write them, on in-memory arrays.

Each takes the networks from the matching recipe (the same model) and runs the tutorial's loop:
its `tf.function` step, its Python for-loop over a `tf.data` pipeline built from numpy arrays,
and its per-step host work (printing losses, `float()` of tensors, in-loop plots and image saves,
checkpoints at the tutorial's interval). Each returns (steps, seconds, networks), the seconds
timed from the start of the training loop (first-call tracing included) to its last step.
"""
from __future__ import annotations

import io
import tempfile
import time

import numpy as np


def _info(images: np.ndarray, n_classes: int = 10, fixed=None):
    from components.recipe import DataInfo

    return DataInfo(tuple(images.shape[1:]), n_classes, len(images), fixed)


def classifier(x_train, y_train, x_val, y_val, epochs=None, steps=None, cfg=None, verbose=False):
    """Keras guide "Writing a training loop from scratch": the end-to-end MLP loop."""
    import keras
    import tensorflow as tf

    from pipelines import mnist_classifier as rec

    cfg = cfg or rec.Config()
    model, _ = rec.build_network(cfg, _info(x_train.reshape(-1, 28, 28, 1)))
    optimizer = keras.optimizers.Adam(learning_rate=1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    train_acc_metric = keras.metrics.SparseCategoricalAccuracy()
    val_acc_metric = keras.metrics.SparseCategoricalAccuracy()
    train_dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(buffer_size=1024).batch(32)
    val_dataset = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(32)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss_value = loss_fn(y, logits)
            loss_value += sum(model.losses)
        grads = tape.gradient(loss_value, model.trainable_weights)
        optimizer.apply(grads, model.trainable_weights)
        train_acc_metric.update_state(y, logits)
        return loss_value

    @tf.function
    def test_step(x, y):
        val_acc_metric.update_state(y, model(x, training=False))

    done, val_accs = 0, []
    t0 = time.perf_counter()
    for epoch in range(epochs or 10 ** 9):
        for step, (x_batch_train, y_batch_train) in enumerate(train_dataset):
            loss_value = train_step(x_batch_train, y_batch_train)
            if step % 100 == 0 and verbose:
                print(f"Training loss (for 1 batch) at step {step}: {float(loss_value):.4f}")
            done += 1
            if steps and done >= steps:
                break
        train_acc_metric.result()
        train_acc_metric.reset_state()
        for x_batch_val, y_batch_val in val_dataset:
            test_step(x_batch_val, y_batch_val)
        val_accs.append(float(val_acc_metric.result()))
        val_acc_metric.reset_state()
        if steps and done >= steps:
            break
    return done, time.perf_counter() - t0, {"classifier": model, "val_accuracy": val_accs}


def mnist_gan(images, steps, cfg=None, out_dir=None):
    """The same guide's GAN: D on fake+real with label noise, then G with misleading labels;
    every 100 steps it prints the losses and saves a generated image (a host sync)."""
    import keras
    import tensorflow as tf

    from pipelines import mnist_gan as rec

    cfg = cfg or rec.Config()
    out_dir = out_dir or tempfile.mkdtemp()
    generator, discriminator = rec.build_networks(cfg, _info(images))
    d_optimizer = keras.optimizers.Adam(learning_rate=0.0003)
    g_optimizer = keras.optimizers.Adam(learning_rate=0.0004)
    loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)
    latent_dim, batch_size = 128, 64
    dataset = tf.data.Dataset.from_tensor_slices(images).shuffle(buffer_size=1024).batch(batch_size)

    @tf.function
    def train_step(real_images):
        random_latent_vectors = tf.random.normal(shape=(batch_size, latent_dim))
        generated_images = generator(random_latent_vectors)
        combined_images = tf.concat([generated_images, real_images], axis=0)
        labels = tf.concat([tf.ones((batch_size, 1)), tf.zeros((real_images.shape[0], 1))], axis=0)
        labels += 0.05 * tf.random.uniform(labels.shape)
        with tf.GradientTape() as tape:
            predictions = discriminator(combined_images)
            d_loss = loss_fn(labels, predictions)
        grads = tape.gradient(d_loss, discriminator.trainable_weights)
        d_optimizer.apply(grads, discriminator.trainable_weights)
        random_latent_vectors = tf.random.normal(shape=(batch_size, latent_dim))
        misleading_labels = tf.zeros((batch_size, 1))
        with tf.GradientTape() as tape:
            predictions = discriminator(generator(random_latent_vectors))
            g_loss = loss_fn(misleading_labels, predictions)
        grads = tape.gradient(g_loss, generator.trainable_weights)
        g_optimizer.apply(grads, generator.trainable_weights)
        return d_loss, g_loss, generated_images

    done = 0
    t0 = time.perf_counter()
    while done < steps:
        for step, real_images in enumerate(dataset):
            if real_images.shape[0] != batch_size:
                continue  # the guide's step hard-codes the batch size
            d_loss, g_loss, generated_images = train_step(real_images)
            if step % 100 == 0:
                _ = (float(d_loss), float(g_loss))
                img = keras.utils.array_to_img(generated_images[0] * 255.0, scale=False)
                img.save(f"{out_dir}/generated_img_{step}.png")
            done += 1
            if done >= steps:
                break
    return done, time.perf_counter() - t0, {"generator": generator, "discriminator": discriminator}


def fashion_dcgan(images, steps, cfg=None, out_dir=None):
    """The TF DCGAN tutorial (Fashion-MNIST variant): per-step loss and accuracy history pulled
    to the host, the 4x4 plot of the 16 fixed seeds every epoch, a checkpoint every 15 epochs."""
    import keras
    import matplotlib
    import tensorflow as tf

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines import fashion_dcgan as rec

    cfg = cfg or rec.Config()
    out_dir = out_dir or tempfile.mkdtemp()
    generator, discriminator = rec.build_networks(cfg, _info(images))
    cross_entropy = keras.losses.BinaryCrossentropy(from_logits=True)
    generator_optimizer = keras.optimizers.Adam(1e-4)
    discriminator_optimizer = keras.optimizers.Adam(1e-4)
    BATCH_SIZE, noise_dim = 256, 100
    seed = tf.random.normal([16, noise_dim])
    train_dataset = tf.data.Dataset.from_tensor_slices(images).shuffle(60000).batch(BATCH_SIZE)
    checkpoint = tf.train.Checkpoint(generator_optimizer=generator_optimizer,
                                     discriminator_optimizer=discriminator_optimizer,
                                     generator=generator, discriminator=discriminator)

    def discriminator_loss(real_output, fake_output):
        return cross_entropy(tf.ones_like(real_output), real_output) + \
            cross_entropy(tf.zeros_like(fake_output), fake_output)

    def generator_loss(fake_output):
        return cross_entropy(tf.ones_like(fake_output), fake_output)

    @tf.function
    def train_step(images):
        noise = tf.random.normal([BATCH_SIZE, noise_dim])
        with tf.GradientTape() as gen_tape, tf.GradientTape() as disc_tape:
            generated_images = generator(noise, training=True)
            real_output = discriminator(images, training=True)
            fake_output = discriminator(generated_images, training=True)
            gen_loss = generator_loss(fake_output)
            disc_loss = discriminator_loss(real_output, fake_output)
        gradients_of_generator = gen_tape.gradient(gen_loss, generator.trainable_variables)
        gradients_of_discriminator = disc_tape.gradient(disc_loss, discriminator.trainable_variables)
        generator_optimizer.apply_gradients(zip(gradients_of_generator, generator.trainable_variables))
        discriminator_optimizer.apply_gradients(zip(gradients_of_discriminator, discriminator.trainable_variables))
        real_acc = tf.reduce_mean(tf.cast(tf.sigmoid(real_output) > 0.5, tf.float32))
        fake_acc = tf.reduce_mean(tf.cast(tf.sigmoid(fake_output) < 0.5, tf.float32))
        return gen_loss, disc_loss, real_acc, fake_acc

    def generate_and_save_images(model, epoch, test_input):
        predictions = model(test_input, training=False)
        fig = plt.figure(figsize=(4, 4))
        for i in range(predictions.shape[0]):
            plt.subplot(4, 4, i + 1)
            plt.imshow(predictions[i, :, :, 0] * 127.5 + 127.5, cmap="gray")
            plt.axis("off")
        plt.savefig(f"{out_dir}/image_at_epoch_{epoch:04d}.png")
        plt.close(fig)

    history = {"gen_loss": [], "disc_loss": [], "real_acc": [], "fake_acc": []}
    done, epoch = 0, 0
    t0 = time.perf_counter()
    while done < steps:
        for image_batch in train_dataset:
            g, d, ra, fa = train_step(image_batch)
            for k, v in zip(history, (g, d, ra, fa)):
                history[k].append(float(v))
            done += 1
            if done >= steps:
                break
        epoch += 1
        generate_and_save_images(generator, epoch, seed)
        if epoch % 15 == 0:
            checkpoint.save(file_prefix=f"{out_dir}/ckpt")
    return done, time.perf_counter() - t0, {"generator": generator, "discriminator": discriminator}


def pix2pix(inputs, targets, val_input, val_target, steps, size=256, out_dir=None):
    """The TF pix2pix tutorial's fit(): random jitter in the tf.data map, the train step with
    tf.summary scalars, a '.' every 10 steps, a triptych plot every 1000 steps, a checkpoint
    every 5000 steps."""
    import keras
    import matplotlib
    import tensorflow as tf

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines import pix2pix as rec

    out_dir = out_dir or tempfile.mkdtemp()
    generator = rec.build_generator(size, 3, 0)
    discriminator = rec.build_discriminator(size, 3)
    loss_object = keras.losses.BinaryCrossentropy(from_logits=True)
    generator_optimizer = keras.optimizers.Adam(2e-4, beta_1=0.5)
    discriminator_optimizer = keras.optimizers.Adam(2e-4, beta_1=0.5)
    summary_writer = tf.summary.create_file_writer(f"{out_dir}/logs")
    checkpoint = tf.train.Checkpoint(generator_optimizer=generator_optimizer,
                                     discriminator_optimizer=discriminator_optimizer,
                                     generator=generator, discriminator=discriminator)
    resize = size + size * 30 // 256  # 286 at 256

    def random_jitter(input_image, real_image):
        input_image = tf.image.resize(input_image, [resize, resize], method=tf.image.ResizeMethod.NEAREST_NEIGHBOR)
        real_image = tf.image.resize(real_image, [resize, resize], method=tf.image.ResizeMethod.NEAREST_NEIGHBOR)
        stacked = tf.stack([input_image, real_image], axis=0)
        cropped = tf.image.random_crop(stacked, size=[2, size, size, 3])
        input_image, real_image = cropped[0], cropped[1]
        if tf.random.uniform(()) > 0.5:
            input_image = tf.image.flip_left_right(input_image)
            real_image = tf.image.flip_left_right(real_image)
        return input_image, real_image

    train_ds = (tf.data.Dataset.from_tensor_slices((inputs, targets)).map(random_jitter)
                .shuffle(400).batch(1))
    test_ds = tf.data.Dataset.from_tensor_slices((val_input, val_target)).batch(1)

    def generator_loss(disc_generated_output, gen_output, target):
        gan_loss = loss_object(tf.ones_like(disc_generated_output), disc_generated_output)
        l1_loss = tf.reduce_mean(tf.abs(target - gen_output))
        return gan_loss + 100 * l1_loss, gan_loss, l1_loss

    def discriminator_loss(disc_real_output, disc_generated_output):
        return loss_object(tf.ones_like(disc_real_output), disc_real_output) + \
            loss_object(tf.zeros_like(disc_generated_output), disc_generated_output)

    @tf.function
    def train_step(input_image, target, step):
        with tf.GradientTape() as gen_tape, tf.GradientTape() as disc_tape:
            gen_output = generator(input_image, training=True)
            disc_real_output = discriminator([input_image, target], training=True)
            disc_generated_output = discriminator([input_image, gen_output], training=True)
            gen_total_loss, gen_gan_loss, gen_l1_loss = generator_loss(disc_generated_output, gen_output, target)
            disc_loss = discriminator_loss(disc_real_output, disc_generated_output)
        generator_gradients = gen_tape.gradient(gen_total_loss, generator.trainable_variables)
        discriminator_gradients = disc_tape.gradient(disc_loss, discriminator.trainable_variables)
        generator_optimizer.apply_gradients(zip(generator_gradients, generator.trainable_variables))
        discriminator_optimizer.apply_gradients(zip(discriminator_gradients, discriminator.trainable_variables))
        with summary_writer.as_default():
            tf.summary.scalar("gen_total_loss", gen_total_loss, step=step // 1000)
            tf.summary.scalar("gen_gan_loss", gen_gan_loss, step=step // 1000)
            tf.summary.scalar("gen_l1_loss", gen_l1_loss, step=step // 1000)
            tf.summary.scalar("disc_loss", disc_loss, step=step // 1000)

    def generate_images(model, test_input, tar):
        prediction = model(test_input, training=True)
        fig = plt.figure(figsize=(15, 15))
        for i, (img, title) in enumerate(zip([test_input[0], tar[0], prediction[0]],
                                              ["Input Image", "Ground Truth", "Predicted Image"])):
            plt.subplot(1, 3, i + 1)
            plt.title(title)
            plt.imshow(img * 0.5 + 0.5)
            plt.axis("off")
        buf = io.BytesIO()
        plt.savefig(buf)
        plt.close(fig)

    example_input, example_target = next(iter(test_ds.take(1)))
    t0 = time.perf_counter()
    for step, (input_image, target) in train_ds.repeat().take(steps).enumerate():
        if step % 1000 == 0:
            generate_images(generator, example_input, example_target)
        train_step(input_image, target, step)
        if (step + 1) % 5000 == 0:
            checkpoint.save(file_prefix=f"{out_dir}/ckpt")
    return steps, time.perf_counter() - t0, {"generator": generator, "discriminator": discriminator}
